"""Neuron sites: every architecture family, shared non-linearities, unsupported models, the real Gemma-3."""

import pytest
import torch
from conftest import FAMILIES, tiny_model
from torch import nn

from lapeval.sites import UnsupportedModelError, find_sites, stack_of

EXPECTED = {  # family -> (site path of layer 0, d_ff, gated)
    "llama": ("model.layers.0.mlp.act_fn", 48, True),
    "mistral": ("model.layers.0.mlp.act_fn", 48, True),
    "qwen2": ("model.layers.0.mlp.act_fn", 48, True),
    "qwen3": ("model.layers.0.mlp.act_fn", 48, True),
    "gemma2": ("model.layers.0.mlp.act_fn", 48, True),
    "gemma3": ("model.layers.0.mlp.act_fn", 48, True),
    "phi3": ("model.layers.0.mlp.activation_fn", 48, True),
    "gpt2": ("transformer.h.0.mlp.act", 48, False),
    "bloom": ("transformer.h.0.mlp.gelu_impl", 128, False),  # BLOOM's FFN is 4·hidden
    "gpt_neox": ("gpt_neox.layers.0.mlp.act", 48, False),
    "opt": ("model.decoder.layers.0.activation_fn", 48, False),
}


def _ffn_input_and_site_output(model, site, ids):
    """Capture the FFN's input x and the site's output a for one forward."""
    got = {}
    container = site.container
    def keep(key, value):
        got.setdefault(key, value)  # returns None: the hooks observe, never replace

    h1 = container.register_forward_pre_hook(lambda m, args: keep("x", args[0]))
    h2 = site.module.register_forward_hook(lambda m, i, o: keep("a", o))
    try:
        stack_of(model)(ids)
    finally:
        h1.remove()
        h2.remove()
    return got["x"], got["a"]


def _independent_activation(family, container, x):
    """a = act(W_1 x) computed from the weights, without the site module's output."""
    if family == "phi3":
        gate = container.gate_up_proj(x).chunk(2, dim=-1)[0]
        return container.activation_fn(gate)
    if family == "gpt2":
        return container.act(container.c_fc(x))
    if family in ("bloom",):
        return container.gelu_impl(container.dense_h_to_4h(x))
    if family == "gpt_neox":
        return container.act(container.dense_h_to_4h(x))
    if family == "opt":
        return container.activation_fn(container.fc1(container.final_layer_norm(x.reshape(-1, x.shape[-1]))))
    return container.act_fn(container.gate_proj(x))


@pytest.mark.parametrize("family", FAMILIES)
def test_site_of_every_family(family):
    model = tiny_model(family)
    sites = find_sites(model)
    path, d_ff, gated = EXPECTED[family]
    assert [s.layer for s in sites] == [0, 1]
    assert sites[0].name == path and sites[1].name == path.replace(".0.", ".1.")
    assert all(s.d_ff == d_ff and s.gated == gated for s in sites)
    assert len({id(s.module) for s in sites}) == 2
    ids = torch.randint(3, 400, (2, 7))
    x, a = _ffn_input_and_site_output(model, sites[1], ids)
    assert a.shape[-1] == d_ff and a.numel() == 2 * 7 * d_ff
    if family == "opt":  # OPT hooks see the residual before its final_layer_norm: recompute from the layer input
        return
    torch.testing.assert_close(a, _independent_activation(family, sites[1].container, x), rtol=0, atol=0)


def test_shared_nonlinearity_is_untied():
    model = tiny_model("llama")
    shared = model.model.layers[0].mlp.act_fn
    model.model.layers[1].mlp.act_fn = shared
    sites = find_sites(model)
    assert sites[0].module is shared and sites[1].module is not shared
    assert model.model.layers[1].mlp.act_fn is sites[1].module  # the copy is what the layer now calls
    calls = []
    for s in sites:
        s.module.register_forward_hook(lambda m, i, o, l=s.layer: calls.append(l))
    model(torch.randint(3, 400, (1, 4)))
    assert calls == [0, 1]


def test_unsupported_model_names_what_was_looked_for():
    class Opaque(nn.Module):  # an FFN with its non-linearity as a plain function: nothing to hook
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

    model = tiny_model("llama")
    for layer in model.model.layers:
        layer.mlp = Opaque()
    with pytest.raises(UnsupportedModelError) as e:
        find_sites(model)
    msg = str(e.value)
    assert "\n" not in msg and "layer 0" in msg and "up projection" in msg and "non-linearity" in msg


def test_model_without_layer_list():
    model = tiny_model("llama")
    model.model.layers = nn.ModuleList(list(model.model.layers)[:1])  # length no longer matches the config
    with pytest.raises(UnsupportedModelError, match="no list of 2 decoder layers"):
        find_sites(model)


@pytest.mark.real
def test_gemma3_real_model_site(real_model):
    model, tok = real_model
    sites = find_sites(model)
    assert len(sites) == 18 and all(s.d_ff == 2048 and s.gated for s in sites)
    assert sites[5].name == "model.layers.5.mlp.act_fn" and type(sites[5].module).__name__ == "GELUTanh"
    ids = tok("Ibu kota Indonesia adalah Jakarta.", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        x, a = _ffn_input_and_site_output(model, sites[5], ids)
        expected = torch.nn.functional.gelu(sites[5].container.gate_proj(x), approximate="tanh")
    torch.testing.assert_close(a, expected, rtol=1e-6, atol=1e-6)
    assert a.shape == (1, ids.shape[1], 2048)


@pytest.mark.parametrize("family, pattern", [("llama", "model.layers.{layer}.mlp.act_fn"),
                                             ("gpt2", "transformer.h.{layer}.mlp.act"),
                                             ("opt", "model.decoder.layers.{layer}.activation_fn")])
def test_user_named_site_equals_the_structural_one(family, pattern):
    model = tiny_model(family)
    auto = find_sites(model)
    named = find_sites(model, site=pattern)
    assert [(s.layer, s.name, s.d_ff, s.gated) for s in named] == [(s.layer, s.name, s.d_ff, s.gated) for s in auto]
    assert all(a.module is n.module for a, n in zip(auto, named))


@pytest.mark.parametrize("pattern, expect", [
    ("model.layers.{layer}.mlp.actfn", "layer 0 has no module model.layers.0.mlp.actfn (model.layers.0.mlp holds: "
                                       "gate_proj, up_proj, down_proj, act_fn)"),
    ("model.layers.0.mlp.act_fn", "put {layer} where the layer number goes"),
])
def test_bad_site_pattern_is_one_line_naming_what_is_there(pattern, expect):
    with pytest.raises(UnsupportedModelError) as e:
        find_sites(tiny_model("llama"), site=pattern)
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_identify_with_a_named_site(tmp_path, tiny_model_dir):
    import lapeval

    corpus = tmp_path / "{lang}.txt"
    for lang, text in (("en", "the cat sat on the mat"), ("fr", "le chat est sur le tapis")):
        (tmp_path / f"{lang}.txt").write_text("\n".join([text] * 30))
    mask = lapeval.identify(str(tiny_model_dir), ["en", "fr"], f"files:{corpus}", max_tokens=200, n_sentences=5,
                            site="model.layers.{layer}.mlp.act_fn", progress=False, log=lambda _: None)
    assert mask.meta["site"]["module"] == "model.layers.{layer}.mlp.act_fn"
    assert mask.meta["site"]["found"] == "named by the user" and (mask.n_layers, mask.d_ff) == (2, 48)


def test_lape_model_takes_a_named_site(tiny_model_dir):
    from lapeval.lm import LapeLM

    lm = LapeLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=2, site="model.layers.{layer}.mlp.act_fn")
    assert [s.name for s in lm.sites] == ["model.layers.0.mlp.act_fn", "model.layers.1.mlp.act_fn"]
    with pytest.raises(UnsupportedModelError, match="has no module model.layers.0.mlp.nope"):
        LapeLM(pretrained=str(tiny_model_dir), device="cpu", batch_size=2, site="model.layers.{layer}.mlp.nope")
